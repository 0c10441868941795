"""Typed configuration of a COVR run: the schema (:mod:`~covr_ray.config.schema`, one section per part of
the system) and its loading from presets, ``--set`` overrides and saved run configs
(:mod:`~covr_ray.config.load`). Import the names from here: ``from covr_ray.config import load_config``."""

from covr_ray.config.load import (PRESET_DIR, REMOVED_FIELDS, available_presets, config_from_dict, load_config,
                                  load_preset_data, parse_override, save_config)
from covr_ray.config.schema import (LANGUAGE_MODEL_TARGETS, CarlaSection, CovrConfig, EDDFSection, EnvSection,
                                    LoggingSection, LoRASection, PriorSection, RALWSection, RaySection,
                                    SACSection, ScheduleSection)

__all__ = ["PRESET_DIR", "REMOVED_FIELDS", "available_presets", "config_from_dict", "load_config", "load_preset_data",
           "parse_override", "save_config", "LANGUAGE_MODEL_TARGETS", "CarlaSection", "CovrConfig", "EDDFSection",
           "EnvSection", "LoggingSection", "LoRASection", "PriorSection", "RALWSection", "RaySection", "SACSection",
           "ScheduleSection"]
