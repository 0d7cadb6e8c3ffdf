"""Query-string filters for the API's list views, and the patterns of free-text inputs."""

from django.core.validators import RegexValidator
from rest_framework import serializers


class QueryFilterSerializer(serializers.Serializer):
    """A filter given with no value (``?status=``) is an error naming the parameter, not "no filter": DRF reads an
    empty query value of an optional field as absent, which would answer a typo'd script with everything."""

    def to_internal_value(self, data):
        if hasattr(data, "getlist"):
            empty = [name for name in self.fields if name in data and not any(v.strip() for v in data.getlist(name))]
            if empty:
                raise serializers.ValidationError(
                    {name: [f"'{name}' was given no value: give one, or leave the parameter out"] for name in empty}
                )
        return super().to_internal_value(data)


# Text a person typed: at least one visible character, no NUL (PostgreSQL cannot store or compare one). Declared as a
# pattern so that the OpenAPI schema says what the server accepts (DRF trims, then refuses blanks and NULs).
VISIBLE_TEXT = RegexValidator(r"^[^\x00]*[^\s\x00][^\x00]*$", "Give some visible text (no NUL characters)")
# Text taken as it is (a password): anything but NUL.
NO_NUL = RegexValidator(r"^[^\x00]*$", "NUL characters are not allowed")
