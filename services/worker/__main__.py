import os
import sys

from services.common.threads import openmp_env_defaults

os.environ.update(openmp_env_defaults(os.environ))  # before the server's imports load torch

from services.common.process import run_service_main
from services.worker.server import WorkerServiceConfig, start_worker

sys.exit(run_service_main("worker", WorkerServiceConfig, start_worker))
