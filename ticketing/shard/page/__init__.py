"""Static files of the browser page (served by the shards)."""
