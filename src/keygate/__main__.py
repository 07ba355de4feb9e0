from keygate.cli.main import main

main()
