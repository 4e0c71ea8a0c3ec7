"""Temporal activities of a backtest. All I/O of the orchestration lives here.

Every activity is safe to repeat: uploads are content-addressed or attempt-scoped, the result
is committed by a conditional manifest write, and a resumed run starts from a checkpoint that
was durably stored before its key was ever heartbeated.

Trust boundary: the worker holds the storage credentials and the platform's signing key; the
runner process (user code) holds neither. The worker fetches everything a run reads, checks a
checkpoint's seal and identity before handing it over, and seals checkpoints and signs results
that the runner leaves in its work directory.

Faults: every activity heartbeats about once a second (a lost worker is noticed within the
heartbeat timeout, in every stage), and object-store calls wait out an outage for
``outage_budget_s`` with capped backoff instead of burning a retry count in seconds.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path

from temporalio import activity

from tickreplay.activities.errors import reports_errors
from tickreplay.activities.node import pulse
from tickreplay.activities.run import RunActivity
from tickreplay.errors import (
    AvoidNode,
    NodeUnhealthy,
    ResultConflictError,
    ResultsError,
    SpecError,
)
from tickreplay.workflows import types as t


class BacktestActivities(RunActivity):
    """Activities bound to one worker node: its settings, cache, key and own task queue."""

    @activity.defn(name="resolve_strategy")
    @reports_errors
    def resolve_strategy(self, inp: t.ResolveInput) -> t.StrategyRef:
        """Store the strategy bundle content-addressed; its sha256 digest names it for good.
        A strategy image is resolved to its manifest's digest instead (verified against the
        registry's bytes): every attempt then runs exactly that digest."""
        from tickreplay.data.objectstore import ObjectExistsError
        from tickreplay.strategy.loader import StrategyBundle

        if inp.image:
            return self._resolve_image(inp)

        try:
            bundle = StrategyBundle(inp.bundle["files"], inp.bundle["entry"],
                                    inp.bundle.get("class"), "")
            bundle = StrategyBundle.from_bytes(bundle.to_bytes())
        except (KeyError, TypeError, ValueError) as e:
            raise SpecError(f"invalid strategy bundle: {e}") from None
        # Addressed by the whole bundle (sources AND entry/class): two classes of one file
        # share a source digest but are different strategies.
        raw = bundle.to_bytes()
        key = f"strategies/{hashlib.sha256(raw).hexdigest()}.json"
        store = self._artifacts()

        def put() -> None:
            try:
                store.put_bytes(key, raw, if_none_match=True)
            except ObjectExistsError:
                pass  # same address, same bytes

        with pulse():
            self._retry(put, "store strategy bundle")
        self._event(inp.job_id, "strategy_resolved", digest=bundle.digest)
        return t.StrategyRef(bundle.digest, key)

    def _resolve_image(self, inp: t.ResolveInput) -> t.StrategyRef:
        from tickreplay.runner.registry import ImageRef, plain_http, resolve

        ref = ImageRef.parse(inp.image)
        with pulse():
            image = resolve(ref, credentials=self.settings.registry_credentials(), scheme=(
                "http" if plain_http(ref.registry, self.settings.registry_insecure_hosts())
                else "https"))
        self._event(inp.job_id, "strategy_resolved", digest=image.digest, image=image.pinned,
                    index_digest=image.index_digest, reference=inp.image)
        return t.StrategyRef(image.digest, "", image.pinned)

    @activity.defn(name="plan_data")
    @reports_errors
    def plan_data(self, inp: t.PlanInput) -> t.PlanRef:
        """Partitions + fingerprint, stored as JSON; an empty plan is a non-retryable error."""
        from tickreplay.data.catalog import plan_data
        from tickreplay.data.objectstore import open_store
        from tickreplay.spec import BacktestSpec

        spec = BacktestSpec.parse(inp.spec)
        with pulse():
            plan = self._retry(lambda: plan_data(open_store(spec.data_url, self.settings),
                                                 spec.symbols, spec.start, spec.end,
                                                 events=spec.kinds()), "plan data")
        key = f"jobs/{inp.job_id}/plan-{plan.fingerprint[:16]}.json"
        with pulse():
            self._retry(lambda: self._artifacts().put_bytes(key, json.dumps(plan.to_dict()).encode()),
                        "store plan")
        self._event(inp.job_id, "planned", fingerprint=plan.fingerprint,
                    partitions=len(plan.partitions))
        return t.PlanRef(key, plan.fingerprint, len(plan.partitions))

    @activity.defn(name="warm_cache")
    @reports_errors
    def warm_cache(self, inp: t.WarmInput) -> t.WarmResult:
        """Fetch the plan's partitions into this node's cache; return this node's own queue.

        A node whose cache is unusable (read-only, full) refuses with ``NodeUnhealthy`` naming
        itself and the reason, before downloading anything; the workflow then places the run
        on another node. So does a node the workflow already found unhealthy.
        """
        from tickreplay.runner.driver import count_ticks

        self._event(inp.job_id, "warm_started", attempt=activity.info().attempt)
        if self.node in (inp.avoid_nodes or []):
            raise AvoidNode(f"node {self.node} was found unhealthy for this job; "
                            "leaving it to another node")
        with pulse():
            time.sleep(self.settings.fault_delay_s("warm_cache"))
            plan = self._load_plan(inp.plan_key)
            problem = self.cache.health_problem(self.cache.missing_bytes(plan.partitions))
            if problem is not None:
                self._event(inp.job_id, "node_unhealthy", reason=problem)
                raise NodeUnhealthy(f"node {self.node}: {problem}",
                                    details={"node": self.node, "reason": problem})
            paths = self._fetch_data(plan)
            total = count_ticks(paths)
        self._event(inp.job_id, "cache_warm", partitions=len(paths), ticks_total=total,
                    task_queue=self.node_queue)
        return t.WarmResult(self.node_queue, self.node, total)

    @activity.defn(name="publish_results")
    @reports_errors
    def publish_results(self, inp: t.PublishInput) -> t.PublishOutput:
        """Verify the staged result (signature, files, hash); commit it under results/{job_id}/.

        Only the files the signed staged manifest lists are copied, so bytes anyone else put
        under the staging prefix never reach the result. After the commit, the job's
        checkpoints and staging objects are removed (results are never touched).
        """
        from tickreplay.data.objectstore import S3Store
        from tickreplay.results import publish_results
        from tickreplay.results.files import MANIFEST, read_manifest

        self._event(inp.job_id, "publish_started", attempt=activity.info().attempt)
        artifacts = self._artifacts()
        results = S3Store(self.settings.results_bucket, settings=self.settings)

        def work() -> None:
            results.ensure_bucket()
            with tempfile.TemporaryDirectory(prefix="tickreplay-publish-") as tmp:
                artifacts.download(f"{inp.staging_prefix}/{MANIFEST}", Path(tmp) / MANIFEST)
                manifest = read_manifest(Path(tmp))
                for name in sorted(manifest.get("files", {})):
                    if "/" in name or name.startswith("."):
                        raise ResultsError(f"staged manifest lists a bad file name {name!r}")
                    artifacts.download(f"{inp.staging_prefix}/{name}", Path(tmp) / name)
                if manifest.get("result_hash") != inp.result_hash:
                    raise ResultsError("staged result hash does not match the run's")
                publish_results(Path(tmp), results, inp.job_id, key=self.key)

        with pulse():
            time.sleep(self.settings.fault_delay_s("publish_results"))
            try:
                self._retry(work, "publish results")
            except ResultConflictError:
                raise
            except (ResultsError, FileNotFoundError) as e:
                raise ResultsError(f"staged result refused: {e}") from None
            self._clean_up(inp.job_id)
        url = f"s3://{self.settings.results_bucket}/{inp.job_id}/"
        self._event(inp.job_id, "published", results_url=url, result_hash=inp.result_hash)
        return t.PublishOutput(url, inp.result_hash)

    def _clean_up(self, job_id: str) -> None:
        """Remove the finished job's checkpoints and staging objects (best effort)."""
        try:
            from tickreplay.results.garbage import clean_job

            stats = clean_job(self._artifacts(), job_id)
            self._event(job_id, "cleaned_up", **{k: v for k, v in vars(stats).items()
                                                 if isinstance(v, int | float)})
        except Exception:  # noqa: BLE001 - garbage left behind is for `tickreplay gc`
            activity.logger.warning("clean-up of %s failed", job_id, exc_info=True)
