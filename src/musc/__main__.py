"""`python -m musc`: the `musc` command, for environments where the console script is not on PATH."""

from musc.cli import main

if __name__ == "__main__":
    main(prog_name="musc")
