"""The Conversations API: records, query encoding, the HTTP client and its errors."""
