from loadgen.cli import main

# Guarded: a worker process (images built ahead of need) imports the main module again.
if __name__ == "__main__":
    raise SystemExit(main())
