"""Ad-hoc SQL over the catalog with DuckDB (``tickreplay data query``).

DuckDB reads the catalog through a pyarrow dataset rather than its own httpfs extension: the
extension is downloaded at run time, which fails on machines without internet access, while
pyarrow's S3 filesystem ships in the wheel. The same code path serves local directories.
"""

from __future__ import annotations

from urllib.parse import urlparse

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs

from tickreplay.data.errors import DataError
from tickreplay.settings import Settings

# Hive partition columns of the layout ``ticks/symbol=SYM/date=YYYY-MM-DD/``.
PARTITIONING = ds.partitioning(
    pa.schema([("symbol", pa.string()), ("date", pa.date32())]), flavor="hive"
)


def _filesystem(url: str, settings: Settings | None) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path of the ``ticks`` root for a catalog URL."""
    parsed = urlparse(url)
    if parsed.scheme == "s3":
        if settings is None:
            raise ValueError(f"{url}: an s3:// catalog needs Settings (endpoint and credentials)")
        endpoint = urlparse(settings.s3_endpoint or "")
        fs = pafs.S3FileSystem(
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            region=settings.s3_region,
            endpoint_override=endpoint.netloc or None,
            scheme=endpoint.scheme or "https",
        )
        return fs, f"{parsed.netloc}{parsed.path.rstrip('/')}/ticks"
    if parsed.scheme == "file":
        return pafs.LocalFileSystem(), f"{parsed.path.rstrip('/')}/ticks"
    if parsed.scheme and len(parsed.scheme) > 1:
        raise ValueError(f"unsupported storage URL {url!r}: use a directory or s3://bucket")
    return pafs.LocalFileSystem(), f"{url.rstrip('/')}/ticks"


def ticks_dataset(url: str, settings: Settings | None = None) -> ds.Dataset:
    """A pyarrow dataset over every partition of the catalog, with ``symbol`` and ``date``.

    The schema is unified over all files, so partitions with and without optional columns
    (e.g. quotes) query together; absent columns read as NULL.
    """
    fs, root = _filesystem(url, settings)
    info = fs.get_file_info(root)
    if info.type != pafs.FileType.Directory:
        raise DataError(f"no tick catalog at {url} (expected a 'ticks/' folder)")
    factory = ds.FileSystemDatasetFactory(
        fs,
        pafs.FileSelector(root, recursive=True),
        ds.ParquetFileFormat(),
        ds.FileSystemFactoryOptions(partitioning=PARTITIONING, partition_base_dir=root),
    )
    return factory.finish(factory.inspect(fragments=None))


def query(url: str, sql: str, settings: Settings | None = None) -> pa.Table:
    """Run ``sql`` against a view ``ticks`` over the catalog at ``url`` and return the result.

    Args:
        url: Catalog directory or ``s3://bucket[/prefix]``.
        sql: DuckDB SQL; the table ``ticks`` has the tick columns plus ``symbol`` and ``date``.
        settings: S3 endpoint and credentials (defaults to the environment's settings).
    """
    dataset = ticks_dataset(url, settings)
    con = duckdb.connect()
    try:
        con.register("ticks", dataset)
        relation = con.sql(sql)
        # Statements without a result set (e.g. SET) give no relation: an empty table then.
        return relation.to_arrow_table() if relation is not None else pa.table({})
    finally:
        con.close()
