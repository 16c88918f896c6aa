"""``python -m harness_tasks path|list|build|clean``: where lm-eval finds the tasks, and what they are.

* ``path``  prints the ``--include_path`` directory (building data and YAMLs there first if needed).
* ``list``  prints the task and group names (offline ones first).
* ``build`` builds (if needed) and prints the build directory with its manifest summary.
* ``clean`` removes every other build directory (older code, packages or text) from the cache.
"""

from __future__ import annotations

import argparse
import json
import sys

from .build import ensure_built, remove_old_builds, tasks_dir
from .tasks import LM_EVAL_ONLINE_TASKS, OFFLINE_TASKS, ONLINE_TASKS


def _list() -> str:
    manifest = json.loads((ensure_built() / "manifest.json").read_text())
    lines = [f"offline: {' '.join(OFFLINE_TASKS)}", f"online:  {' '.join(ONLINE_TASKS)} "
             f"(and lm-eval's own {', '.join(LM_EVAL_ONLINE_TASKS)})", "all task and group names:"]
    lines += [f"  {name}" for name in manifest["tasks"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness_tasks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("path", "list", "build", "clean"))
    args = parser.parse_args(argv)
    if args.command == "path":
        print(tasks_dir())
    elif args.command == "list":
        print(_list())
    elif args.command == "clean":
        removed = remove_old_builds(ensure_built())
        print(f"removed {len(removed)} old build(s)" + "".join(f"\n  {p}" for p in removed))
    else:
        root = ensure_built()
        manifest = json.loads((root / "manifest.json").read_text())
        print(f"{root}\n  {len(manifest['tasks'])} task/group configs in {root / 'tasks'}\n"
              f"  {sum(len(v) for v in manifest['files'].values())} data files in {root / 'data'}\n"
              f"  built from {manifest['packages']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
