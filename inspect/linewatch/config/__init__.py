"""The one typed configuration every process reads.

Every field has a default, so `linewatch run` needs no file; a YAML file overrides any part of it.
Errors are reported with their path in the YAML (`cameras[0].exposure_us: must be > 0 (got -5)`).
One module per concern: base (paths, errors), cameras, failsafe, line (the top level), loading, notify, plc, watch.
"""

from linewatch.config.base import ConfigError, _Strict
from linewatch.config.cameras import CameraConfig, EmulatorSource, GenicamSource, ReplaySource, SourceConfig
from linewatch.config.failsafe import (
    BlurRuleConfig,
    DarkSpotRuleConfig,
    ExposureRuleConfig,
    FailsafeConfig,
    ModelHealthConfig,
    PresenceRuleConfig,
    StatisticsRuleConfig,
    StreakConfig,
    TemplateRuleConfig,
)
from linewatch.config.line import (
    ApiConfig,
    InferConfig,
    LineConfig,
    ModelConfig,
    RecipeConfig,
    RecordConfig,
    SecurityConfig,
    ShiftConfig,
    SupervisorConfig,
)
from linewatch.config.loading import _format_error, from_json, load_config, parse_config, to_json
from linewatch.config.notify import HookConfig, MqttConfig, NotifyConfig, SecretError
from linewatch.config.plc import PlcConfig
from linewatch.config.remote import RemoteWorkersConfig
from linewatch.config.retrain import GateConfig, RetrainConfig, RetrainRecipe
from linewatch.config.ship import ShipConfig
from linewatch.config.watch import SIGNAL_NAMES, WatchConfig

__all__ = [
    "SIGNAL_NAMES",
    "ApiConfig",
    "BlurRuleConfig",
    "CameraConfig",
    "ConfigError",
    "DarkSpotRuleConfig",
    "EmulatorSource",
    "ExposureRuleConfig",
    "FailsafeConfig",
    "GateConfig",
    "GenicamSource",
    "HookConfig",
    "InferConfig",
    "LineConfig",
    "ModelConfig",
    "ModelHealthConfig",
    "MqttConfig",
    "NotifyConfig",
    "PlcConfig",
    "PresenceRuleConfig",
    "RecipeConfig",
    "RecordConfig",
    "RemoteWorkersConfig",
    "ReplaySource",
    "RetrainConfig",
    "RetrainRecipe",
    "SecretError",
    "SecurityConfig",
    "ShiftConfig",
    "ShipConfig",
    "SourceConfig",
    "StatisticsRuleConfig",
    "StreakConfig",
    "SupervisorConfig",
    "TemplateRuleConfig",
    "WatchConfig",
    "_Strict",
    "_format_error",
    "from_json",
    "load_config",
    "parse_config",
    "to_json",
]
