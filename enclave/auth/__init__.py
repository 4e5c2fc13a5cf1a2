"""Who is calling: principals, their request tokens, and access levels."""
