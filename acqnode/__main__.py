from acqnode.cli import main

main()
