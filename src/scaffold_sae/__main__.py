from scaffold_sae.cli import main

main()
