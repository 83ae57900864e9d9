"""polyplug's RuntimeConfig read as values, and its log callback as a sink.

``config`` is polyplug-abi's ctypes ``RuntimeConfig`` or any object with the
same attribute names (missing ones take polyplug's defaults: Strict, hot
reload off, signatures off, no log). As polyplug's own Python host does, the
``signature_policy`` argument wins over the config's, and the config's
``on_reload`` and ``trusted_keys`` fields are not read (pass them as
arguments).
"""

from __future__ import annotations

import ctypes
import enum
import logging
from dataclasses import dataclass
from typing import Any

_logger = logging.getLogger("polyplug_isolated.polyplug")


class Compatibility(enum.IntEnum):
    Strict = 0
    Relaxed = 1
    Yolo = 2


class LogLevel(enum.IntEnum):
    Error = 1
    Warn = 2
    Info = 3
    Debug = 4
    Trace = 5


_TO_PYTHON = {
    LogLevel.Error: logging.ERROR,
    LogLevel.Warn: logging.WARNING,
    LogLevel.Info: logging.INFO,
    LogLevel.Debug: logging.DEBUG,
    LogLevel.Trace: logging.DEBUG - 5,
}


@dataclass(frozen=True)
class Settings:
    hot_reload_enabled: bool
    compatibility: Compatibility
    signature_policy: int


def read_settings(config: Any, signature_policy: Any) -> Settings:
    """The config's values, checked (a value polyplug does not define is a ValueError)."""
    policy = signature_policy if signature_policy is not None else getattr(config, "signature_policy", 0)
    try:
        compatibility = Compatibility(int(getattr(config, "compatibility", 0)))
    except ValueError:
        raise ValueError(
            f"RuntimeConfig.compatibility must be Strict (0), Relaxed (1) or Yolo (2), "
            f"not {config.compatibility!r}"
        ) from None
    if int(policy) not in (0, 1, 2):
        raise ValueError(f"signature_policy must be Off (0), WarnOnly (1) or Required (2), not {policy!r}")
    return Settings(bool(getattr(config, "hot_reload_enabled", False)), compatibility, int(policy))


class LogSink:
    """Runtime messages: to Python logging always, and to ``config.log`` up to ``log_max_level``.

    ``config.log`` is called as polyplug calls it, ``log(user_data, level,
    scope, message)``: a ctypes function pointer (polyplug-abi's field type)
    gets StringViews, a plain Python callable gets ``str``.
    """

    def __init__(self, config: Any):
        self._callback: Any = getattr(config, "log", None) if config is not None else None
        self._user_data = getattr(config, "log_user_data", None)
        self.max_level = int(getattr(config, "log_max_level", 0) or 0)
        self.enabled = bool(self._callback)

    def emit(self, level: int, scope: str, message: str) -> None:
        level = level if level in LogLevel._value2member_map_ else LogLevel.Error
        _logger.log(_TO_PYTHON[LogLevel(level)], "[%s] %s", scope, message)
        self.deliver(level, scope, message)

    def deliver(self, level: int, scope: str, message: str) -> None:
        """To ``config.log`` only (the record already went to logging elsewhere)."""
        if not self.enabled or level > self.max_level:
            return
        callback = self._callback
        try:
            if isinstance(callback, ctypes._CFuncPtr):  # type: ignore[attr-defined]
                from polyplug_abi import StringView

                scope_bytes, message_bytes = scope.encode(), message.encode()
                callback(
                    self._user_data,
                    level,
                    StringView(ctypes.cast(ctypes.c_char_p(scope_bytes), ctypes.c_void_p), len(scope_bytes)),
                    StringView(
                        ctypes.cast(ctypes.c_char_p(message_bytes), ctypes.c_void_p), len(message_bytes)
                    ),
                )
            else:
                callback(self._user_data, level, scope, message)
        except Exception:
            _logger.exception("RuntimeConfig.log raised (ignored)")


class PluginLogForwarder(logging.Handler):
    """Plugins' HostApi.log records (logged by the workers' proxies) to a runtime's sink.

    Only records Python logging lets through reach it: lower the level of the
    ``polyplug_isolated.bundle`` logger to see a plugin's Info and Debug.
    """

    def __init__(self, sink: LogSink, owns: Any):
        super().__init__()
        self._sink = sink
        self._owns = owns  # bundle name -> bool: whether this runtime loaded it

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg != "[%s] %s" or not isinstance(record.args, tuple) or len(record.args) != 2:
            return
        bundle = record.name.removeprefix("polyplug_isolated.bundle.")
        if not self._owns(bundle):
            return
        level = min((lvl for lvl, py in _TO_PYTHON.items() if record.levelno >= py), default=LogLevel.Trace)
        scope, message = record.args
        self._sink.deliver(level, str(scope), str(message))
