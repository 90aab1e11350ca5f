from loadtest.loadgen.cli import main

main()
