from procnode.cli import main

main()
