from rest_framework.pagination import PageNumberPagination

from moran.paging import KeysFirstPaginator


class Pagination(PageNumberPagination):
    """``?page=N&page_size=M``; the body is ``{count, next, previous, results}``."""

    # A deep page walks the ordering's index for its keys, then reads only its own rows.
    django_paginator_class = KeysFirstPaginator

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class LogPagination(Pagination):
    page_size = 200
    max_page_size = 1000
