from qt_cli.app import main

main()
