import sys

from services.common.process import run_service_main
from services.worker.server import start_worker
from services.worker.service_config import WorkerServiceConfig

sys.exit(run_service_main("worker", WorkerServiceConfig, start_worker))
