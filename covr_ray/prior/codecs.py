"""Action codecs: the VLM's text answer <-> a continuous action in [-1, 1].

One codec per env family:

- ``driving`` (2-D action ``[steer, throttle_brake]``): the answer is a steering command and a speed
  command in the action semantics of the paper, e.g. ``"turn left slightly, accelerate"``. Each command
  is one of seven evenly spaced levels, so the codec's resolution is half a level step (1/6).
- ``numeric`` (any action dimension D): the answer is a bracketed vector with two decimals,
  ``"[0.25, -0.50, 1.00]"``; resolution 0.005.

Each codec offers:

- ``encode(action) -> str``: the canonical answer for an RL action (the fine-tuning target text).
- ``decode(text) -> np.ndarray | None``: never raises on any input. It is lenient (free-form answers from
  an unconstrained model are searched for the codec's phrases or numbers); ``None`` means "no prior".
- ``regex``: the canonical answer format, for vLLM's structured outputs. Every string fully matching it
  decodes (tested with strings generated from the regex itself).
- ``resolution``: ``|decode(encode(a)) - a| <= resolution`` for every ``a`` in [-1, 1]^D.
- ``format_instructions``: one sentence telling the model the answer format (used by prompts.py).
- ``max_answer_chars``: the longest canonical answer, characters; a byte-level tokenizer needs at most
  this many tokens (plus end of sequence) to write it.
"""

from __future__ import annotations

import abc
import math
import re
from typing import Any, Optional, Sequence

import numpy as np

from covr_ray.columns import ACTION_BOUND_TOLERANCE
from covr_ray.errors import CodecError

#: Codec names accepted by :func:`get_codec`.
CODEC_NAMES = ("driving", "numeric")
#: Longest text :meth:`ActionCodec.decode` looks at; longer inputs are not an action answer.
MAX_TEXT_CHARS = 4096
#: Largest action dimension of the numeric codec (longer answers would not fit a short generation).
MAX_NUMERIC_DIM = 64
#: Slack for float round-off when checking that an action lies in [-1, 1].


class ActionCodec(abc.ABC):
    """Text <-> action in [-1, 1]^action_dim. Subclasses set ``name``, ``regex`` and ``resolution``."""

    name: str
    action_dim: int
    regex: str
    resolution: float

    def encode(self, action: Any) -> str:
        """Canonical answer text of ``action``: (action_dim,) float in [-1, 1].

        Raises:
            CodecError: the action is mis-shaped, non-finite or outside [-1, 1].
        """
        return self._encode(self._check_action(action))

    def decode(self, text: Any) -> Optional[np.ndarray]:
        """Action (action_dim,) float32 in [-1, 1] read from ``text``, or None when it holds none.

        Never raises: any string (or non-string) gives an array or None.
        """
        if not isinstance(text, str) or len(text) > MAX_TEXT_CHARS:
            return None
        try:
            out = self._decode(text)
        except (ValueError, OverflowError, IndexError):  # defensive: a parser corner we did not foresee
            return None
        if out is None:
            return None
        out = np.asarray(out, dtype=np.float32)
        if out.shape != (self.action_dim,) or not np.all(np.isfinite(out)):
            return None
        return np.clip(out, -1.0, 1.0)

    @property
    @abc.abstractmethod
    def format_instructions(self) -> str:
        """One or two sentences telling the model how to format its answer."""

    @property
    @abc.abstractmethod
    def max_answer_chars(self) -> int:
        """Characters of the longest canonical answer."""

    @abc.abstractmethod
    def _encode(self, action: np.ndarray) -> str: ...

    @abc.abstractmethod
    def _decode(self, text: str) -> Optional[Sequence[float]]: ...

    def _check_action(self, action: Any) -> np.ndarray:
        try:
            arr = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise CodecError(f"{self.name} codec: action {action!r} is not numeric; allowed: "
                             f"{self.action_dim} floats in [-1, 1]") from exc
        if arr.shape != (self.action_dim,):
            raise CodecError(f"{self.name} codec: action of shape {arr.shape} ({action!r}); allowed: shape "
                             f"({self.action_dim},) in [-1, 1]")
        if not np.all(np.isfinite(arr)) or np.any(np.abs(arr) > 1.0 + ACTION_BOUND_TOLERANCE):
            raise CodecError(f"{self.name} codec: action {arr.tolist()} has values outside [-1, 1] or "
                             "non-finite ones; allowed: finite values in [-1, 1] (the policy's normalised "
                             "action space)")
        return np.clip(arr, -1.0, 1.0)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(action_dim={self.action_dim}, resolution={self.resolution:.4g})"


# ---------------------------------------------------------------------------------------------------
# Driving: [steer, throttle_brake] as action semantics
# ---------------------------------------------------------------------------------------------------

#: Canonical steering commands, left (-1) to right (+1), evenly spaced.
STEER_COMMANDS = ("turn left sharply", "turn left", "turn left slightly", "keep lane",
                  "turn right slightly", "turn right", "turn right sharply")
#: Canonical speed commands, full brake (-1) to full throttle (+1), evenly spaced.
SPEED_COMMANDS = ("brake hard", "brake", "slow down", "maintain speed",
                  "accelerate slightly", "accelerate", "accelerate hard")

#: Other wordings a free-form answer may use, mapped to a canonical command.
_STEER_SYNONYMS = {
    "turn sharply left": "turn left sharply", "sharp left": "turn left sharply", "hard left": "turn left sharply",
    "steer left": "turn left", "go left": "turn left", "change lane left": "turn left",
    "change to the left lane": "turn left",
    "turn slightly left": "turn left slightly", "steer slightly left": "turn left slightly",
    "steer left slightly": "turn left slightly", "slightly left": "turn left slightly",
    "keep the lane": "keep lane", "stay in lane": "keep lane", "stay in the lane": "keep lane",
    "go straight": "keep lane", "keep straight": "keep lane", "drive straight": "keep lane",
    "straight ahead": "keep lane",
    "turn sharply right": "turn right sharply", "sharp right": "turn right sharply",
    "hard right": "turn right sharply",
    "steer right": "turn right", "go right": "turn right", "change lane right": "turn right",
    "change to the right lane": "turn right",
    "turn slightly right": "turn right slightly", "steer slightly right": "turn right slightly",
    "steer right slightly": "turn right slightly", "slightly right": "turn right slightly",
}
_SPEED_SYNONYMS = {
    "emergency brake": "brake hard", "brake sharply": "brake hard", "stop": "brake hard",
    "brake gently": "slow down", "brake slightly": "slow down", "decelerate": "slow down",
    "slow": "slow down",
    "keep speed": "maintain speed", "keep the speed": "maintain speed", "maintain the speed": "maintain speed",
    "cruise": "maintain speed", "coast": "maintain speed", "keep going": "maintain speed",
    "speed up slightly": "accelerate slightly", "accelerate gently": "accelerate slightly",
    "speed up": "accelerate", "go faster": "accelerate",
    "full throttle": "accelerate hard", "accelerate sharply": "accelerate hard",
    "accelerate strongly": "accelerate hard",
}


def _levels(n: int) -> np.ndarray:
    return np.linspace(-1.0, 1.0, n)


def _phrase_pattern(phrases: Sequence[str]) -> re.Pattern[str]:
    """Alternation of phrases (longest first, so 'turn left slightly' wins over 'turn left'), words
    separated by any whitespace, on word boundaries, case-insensitive."""
    ordered = sorted(set(phrases), key=len, reverse=True)
    parts = [r"\s+".join(re.escape(w) for w in p.split()) for p in ordered]
    return re.compile(r"\b(" + "|".join(parts) + r")\b", re.IGNORECASE)


class DrivingCodec(ActionCodec):
    """``"<steering command>, <speed command>"`` <-> ``[steer, throttle_brake]``.

    Seven evenly spaced levels per dimension (-1, -2/3, ..., 1), so the round-trip error is at most half a
    step, 1/6. Free-form answers are searched for the commands and their synonyms ("decelerate", "go
    straight", "speed up", ...); one missing dimension is read as its neutral command ("accelerate" alone
    = keep lane, accelerate), two different commands for one dimension are ambiguous (None), no command at
    all is None.
    """

    name = "driving"

    def __init__(self, action_dim: int = 2) -> None:
        if action_dim != 2:
            raise CodecError(f"driving codec: action_dim {action_dim!r}; allowed: 2 ([steer, throttle_brake]); "
                             "use the numeric codec for other action spaces")
        self.action_dim = 2
        self.resolution = 1.0 / (len(STEER_COMMANDS) - 1)
        self._steer_levels = _levels(len(STEER_COMMANDS))
        self._speed_levels = _levels(len(SPEED_COMMANDS))
        self._steer_value = {c: float(v) for c, v in zip(STEER_COMMANDS, self._steer_levels)}
        self._speed_value = {c: float(v) for c, v in zip(SPEED_COMMANDS, self._speed_levels)}
        self._steer_canon = {**{c: c for c in STEER_COMMANDS}, **_STEER_SYNONYMS}
        self._speed_canon = {**{c: c for c in SPEED_COMMANDS}, **_SPEED_SYNONYMS}
        self._steer_re = _phrase_pattern(list(self._steer_canon))
        self._speed_re = _phrase_pattern(list(self._speed_canon))
        # Commands are lowercase letters and single spaces only: no escaping needed, and none is done so
        # that every regex dialect of the structured-output backends reads the pattern the same way.
        self.regex = "(" + "|".join(STEER_COMMANDS) + "), (" + "|".join(SPEED_COMMANDS) + ")"

    @property
    def format_instructions(self) -> str:
        return ("Answer with one steering command and one speed command separated by a comma, for example "
                "'keep lane, accelerate'. Steering commands: " + ", ".join(STEER_COMMANDS) + ". Speed commands: "
                + ", ".join(SPEED_COMMANDS) + ".")

    @property
    def max_answer_chars(self) -> int:
        return max(map(len, STEER_COMMANDS)) + 2 + max(map(len, SPEED_COMMANDS))

    def _encode(self, action: np.ndarray) -> str:
        steer = STEER_COMMANDS[int(np.argmin(np.abs(self._steer_levels - action[0])))]
        speed = SPEED_COMMANDS[int(np.argmin(np.abs(self._speed_levels - action[1])))]
        return f"{steer}, {speed}"

    @staticmethod
    def _find(pattern: re.Pattern[str], canon: dict[str, str], text: str) -> set[str]:
        found = set()
        for m in pattern.finditer(text):
            key = " ".join(m.group(1).lower().split())
            found.add(canon[key])
        return found

    def _decode(self, text: str) -> Optional[Sequence[float]]:
        steers = self._find(self._steer_re, self._steer_canon, text)
        speeds = self._find(self._speed_re, self._speed_canon, text)
        if (not steers and not speeds) or len(steers) > 1 or len(speeds) > 1:
            return None
        steer = self._steer_value[steers.pop()] if steers else 0.0
        speed = self._speed_value[speeds.pop()] if speeds else 0.0
        return [steer, speed]


# ---------------------------------------------------------------------------------------------------
# Numeric: a short vector with two decimals
# ---------------------------------------------------------------------------------------------------

_NUMBER_RE = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d{1,4})?")
_BRACKET_RE = re.compile(r"\[([^\[\]]{0,1024})\]")
#: One canonical component: -1.00 .. 1.00 with exactly two decimals.
_COMPONENT_REGEX = r"-?(0\.[0-9]{2}|1\.00)"


class NumericCodec(ActionCodec):
    """``"[a_1, ..., a_D]"`` with two decimals <-> the action vector (D = action_dim).

    Resolution 0.005 (rounding to two decimals). Free-form answers: the first bracketed group holding
    exactly D numbers, else all numbers of the text if there are exactly D. A number outside
    [-1 - resolution, 1 + resolution] or non-finite makes the answer unparseable (None) rather than being
    clipped into a made-up action.
    """

    name = "numeric"
    decimals = 2

    def __init__(self, action_dim: int) -> None:
        if isinstance(action_dim, bool) or not isinstance(action_dim, (int, np.integer)) \
                or not 1 <= action_dim <= MAX_NUMERIC_DIM:
            raise CodecError(f"numeric codec: action_dim {action_dim!r}; allowed: an integer in "
                             f"1..{MAX_NUMERIC_DIM}")
        self.action_dim = int(action_dim)
        self.resolution = 0.5 * 10.0 ** (-self.decimals)
        self.regex = r"\[" + ", ".join([_COMPONENT_REGEX] * self.action_dim) + r"\]"

    @property
    def format_instructions(self) -> str:
        example = ", ".join(["0.25", "-0.50", "1.00", "0.00"][i % 4] for i in range(self.action_dim))
        return (f"Answer with {self.action_dim} number{'s' if self.action_dim > 1 else ''} between -1 and 1, "
                f"two decimals each, in square brackets separated by commas, for example [{example}].")

    @property
    def max_answer_chars(self) -> int:
        return 2 + self.action_dim * len("-0.00") + (self.action_dim - 1) * len(", ")

    def _encode(self, action: np.ndarray) -> str:
        parts = []
        for x in action:
            s = f"{x:.{self.decimals}f}"
            parts.append("0.00" if s == "-0.00" else s)
        return "[" + ", ".join(parts) + "]"

    def _values(self, chunk: str) -> Optional[list[float]]:
        nums = _NUMBER_RE.findall(chunk)
        if len(nums) != self.action_dim:
            return None
        values = [float(n) for n in nums]
        if not all(math.isfinite(v) and abs(v) <= 1.0 + self.resolution for v in values):
            return None
        return values

    def _decode(self, text: str) -> Optional[Sequence[float]]:
        for m in _BRACKET_RE.finditer(text):
            values = self._values(m.group(1))
            if values is not None:
                return values
        return self._values(text)


def get_codec(name: str, action_dim: int) -> ActionCodec:
    """The codec ``name`` ("driving" | "numeric") for an action space of ``action_dim`` dimensions.

    Raises:
        CodecError: unknown name, or an action_dim the codec cannot represent (driving needs 2).
    """
    if name == "driving":
        return DrivingCodec(action_dim)
    if name == "numeric":
        return NumericCodec(action_dim)
    raise CodecError(f"codec name {name!r}; allowed: one of {', '.join(CODEC_NAMES)}")
