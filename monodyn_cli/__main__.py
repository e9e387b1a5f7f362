from monodyn_cli.app import main

main()
