from pythia_tl.cli import main

main()
