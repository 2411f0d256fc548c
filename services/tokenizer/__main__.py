import sys

from services.common.process import run_service_main
from services.tokenizer.server import TokenizerServiceConfig, start_tokenizer

sys.exit(run_service_main("tokenizer", TokenizerServiceConfig, start_tokenizer))
