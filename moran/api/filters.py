"""Query-string filters for the API's list views."""

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
