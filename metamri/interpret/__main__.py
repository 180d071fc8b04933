"""``python -m metamri.interpret <command> [overrides]``: dispatch to the command's Hydra app."""

from __future__ import annotations

import importlib
import sys

#: command -> module holding its ``main()`` (a Hydra app reading ``sys.argv``).
COMMANDS = {
    "attention": "metamri.interpret.attention_cli",
    "sweep": "metamri.interpret.sweep_cli",
    "consistency": "metamri.interpret.consistency_cli",
}


def main(argv: list[str] | None = None) -> int:
    """Pop the command from ``argv`` (default ``sys.argv``) and run it; 2 on an unknown one."""
    argv = list(sys.argv if argv is None else argv)
    if len(argv) < 2 or argv[1] not in COMMANDS:
        got = argv[1] if len(argv) > 1 else "(none)"
        print(f"metamri.interpret: error: command {got!r}: choose one of {sorted(COMMANDS)} "
              "(python -m metamri.interpret <command> key=value ...)", file=sys.stderr)
        return 2
    sys.argv = [f"{argv[0]} {argv[1]}", *argv[2:]]
    importlib.import_module(COMMANDS[argv[1]]).main()
    return 0


if __name__ == "__main__":
    sys.exit(main())
