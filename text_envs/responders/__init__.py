"""Responders: the other side of a ``TextChat-v0`` conversation (see :mod:`text_envs.responders.base`).

Built in (:mod:`text_envs.responders.builtin`): ``guess-number`` and ``calculator``; any single-player
TextArena game as ``"textarena:<GameId>"`` (:mod:`text_envs.responders.textarena`, ``pip install
'textgen-rl[games]'``).
"""

from __future__ import annotations

from text_envs.responders.base import (
    Responder,
    ResponderFactory,
    ResponderSpec,
    Turn,
    build_responder,
    check_first_message,
    check_turn,
    list_responders,
    register_responder,
    responder_factory,
    unregister_responder,
)
from text_envs.responders.builtin import Calculator, GuessNumber, register_builtin_responders

__all__ = ["Calculator", "GuessNumber", "Responder", "ResponderFactory", "ResponderSpec", "Turn", "build_responder", "check_first_message",
           "check_turn", "list_responders", "register_responder", "responder_factory", "unregister_responder"]

register_builtin_responders()
