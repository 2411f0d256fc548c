import sys

from services.common.process import run_service_main
from services.worker.server import WorkerServiceConfig, start_worker

sys.exit(run_service_main("worker", WorkerServiceConfig, start_worker))
