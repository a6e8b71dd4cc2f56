"""The embedded demo, apart from the recipe: its synthetic corpus (`demo.corpus`) and its driver (`demo.run`)."""
