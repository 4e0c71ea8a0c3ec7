"""Search attributes of jobs submitted through the API: who, what state, which strategy.

They let the Temporal UI and CLI list one user's backtests
(``temporal workflow list --query "TickreplayUser='alice'"``). Custom attributes must be
registered on the namespace first: the embedded dev server is started with them
(:mod:`tickreplay.stack.temporal`); on a cluster, ``temporal operator search-attribute create``
(docs/stack.md). Only tracked (API) jobs carry them, so workflows started straight on a server
without them keep working.
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

USER = SearchAttributeKey.for_keyword("TickreplayUser")
STATUS = SearchAttributeKey.for_keyword("TickreplayStatus")
STRATEGY = SearchAttributeKey.for_keyword("TickreplayStrategy")
# name -> Temporal type, for registering them (`start-dev --search-attribute NAME=TYPE`).
REGISTER: dict[str, str] = {USER.name: "Keyword", STATUS.name: "Keyword",
                            STRATEGY.name: "Keyword"}


def job_attributes(user: str, status: str, strategy_digest: str) -> TypedSearchAttributes:
    """The attributes a tracked job's workflow starts with."""
    return TypedSearchAttributes([SearchAttributePair(USER, user),
                                  SearchAttributePair(STATUS, status),
                                  SearchAttributePair(STRATEGY, strategy_digest)])
