"""Static files of the marketplace front page (served by the redirect server at /app/)."""
