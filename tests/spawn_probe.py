"""A child started by ``shmpiped.spawning`` in tests: prints what it imported and was given."""

import json
import os
import sys

import shmpiped
from shmpiped.spawning import PATH_VARIABLE


def main() -> int:
    print(json.dumps({"sys_path": sys.path, "shmpiped": shmpiped.__file__, "argv": sys.argv,
                      "path_variable_left": PATH_VARIABLE in os.environ}))
    return 0
