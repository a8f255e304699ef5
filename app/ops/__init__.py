"""Operations: metrics (``metrics``), logging (``logs``), per-request records and request ids
(``context``), and the middleware that ties them to each request (``middleware``)."""
