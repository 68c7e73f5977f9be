"""Third-party messages that only add noise to a run's log, filtered once, here; the entry points call this.

* Gymnasium's "-v4 is out of date" deprecation (with raw ANSI colour codes in log files): the study uses the v4
  MuJoCo tasks on purpose, as the closest to the paper's mujoco-py v3 ones.
* MuJoCo's "Attaching a spec with an empty prefix" warning, raised while MyoSuite builds its models, printed by
  MuJoCo's C library and again as a Python warning (three times per run). Other MuJoCo warnings still print.
"""

from __future__ import annotations

import sys
import warnings

_MUJOCO_SPEC_PREFIX = "Attaching a spec with an empty prefix"


def _mujoco_warning(message: str) -> None:
    if not message.startswith(_MUJOCO_SPEC_PREFIX):
        print(f"WARNING: {message}", file=sys.stderr, flush=True)


def silence_third_party_noise() -> None:
    # Gymnasium installs its own "once" filter for its deprecations when its logger is imported; ours must come
    # after it to take precedence (filters are matched most recent first).
    import gymnasium.logger  # noqa: F401
    import mujoco

    warnings.filterwarnings("ignore", message=r".*The environment \S+ is out of date", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=_MUJOCO_SPEC_PREFIX, category=UserWarning)
    if mujoco.get_mju_user_warning() is None:  # MuJoCo's default handler prints every warning; keep the others
        mujoco.set_mju_user_warning(_mujoco_warning)
