from pythia_tl.launch import main

main()
