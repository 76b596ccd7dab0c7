"""Everything that talks to AWS: sessions, API accounting and the collection strategies."""
