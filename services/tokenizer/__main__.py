import sys

from services.common.process import run_service_main
from services.tokenizer.server import start_tokenizer
from services.tokenizer.service_config import TokenizerServiceConfig

sys.exit(run_service_main("tokenizer", TokenizerServiceConfig, start_tokenizer))
