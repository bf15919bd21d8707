from talkingface.config.configurator import Config, parse_value
from talkingface.config.schema import MODES

__all__ = ["Config", "MODES", "parse_value"]
