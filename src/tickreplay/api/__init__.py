"""The job API: REST (FastAPI) today; gRPC and job submission follow (issue 13)."""
