import sys

from services.common.threads import apply_wait_policy, wait_policy_in_argv

# OpenMP reads its wait policy once, when torch loads it: set before the imports below load torch
apply_wait_policy(wait_policy_in_argv(sys.argv))

from services.common.process import run_service_main
from services.worker.server import start_worker
from services.worker.service_config import WorkerServiceConfig

sys.exit(run_service_main("worker", WorkerServiceConfig, start_worker))
