"""`python -m demo` (what `make demo` runs): see demo.run."""

from demo.run import main

main()
