from talkingface.config.configurator import Config, parse_value

__all__ = ["Config", "parse_value"]
