from majordomo.cli import main

main()
