"""The self-service HTTPS site: where enrolled users manage their own credentials."""
