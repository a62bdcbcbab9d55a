"""`feast serve` with the one patch the glue service applies too (README.md), in the peer's favour.

    python feast_serve.py [feast serve options]      # run in the Feast repository

Feast 0.63 checks on every online read whether the store supports versioned reads by importing
each optional online store; the imports that fail (extras not installed) run again on every
call. No read here is versioned, so the check is skipped. Everything else is Feast's own
feature server: the same CLI, gunicorn with uvicorn workers, FastAPI. The patch is made in
gunicorn's master process before it forks its workers, so every worker has it.
"""

import sys

from feast.cli.cli import cli
from feast.infra.online_stores.online_store import OnlineStore

OnlineStore._check_versioned_read_support = lambda self, grouped_refs: None

if __name__ == "__main__":
    sys.exit(cli(["serve", *sys.argv[1:]]))
