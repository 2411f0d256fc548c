import sys

from services.common.process import run_service_main
from services.scheduler.server import start_scheduler
from services.scheduler.service_config import SchedulerServiceConfig

sys.exit(run_service_main("scheduler", SchedulerServiceConfig, start_scheduler))
