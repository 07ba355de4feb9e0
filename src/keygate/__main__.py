from keygate.cli.entry import main

main()
