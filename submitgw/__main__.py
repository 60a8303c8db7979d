from submitgw.cli import main

main()
