"""`python -m pipeline.run`: the command line's entry point (pipeline.cli). In Python, `pipeline.run(...)` is the
API's function (pipeline.api.run), so this module is not for importing: importing it would put a module where
that function is."""
import sys

if __name__ == "__main__":
    from pipeline.cli import main

    sys.exit(main())
raise ImportError("pipeline/run.py is the entry point of `python -m pipeline.run`; in Python call pipeline.run(...) "
                  "(the API) or pipeline.cli.main(argv) (the command line)")
