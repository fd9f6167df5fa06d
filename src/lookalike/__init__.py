"""lookalike: teach a text-to-image model what one person looks like.

Importing this package loads no model and creates no folder; every heavy import happens
inside the function that needs it.
"""

__version__ = "0.1.0"
