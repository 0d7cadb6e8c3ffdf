"""POST /api/auth/login and /api/auth/logout."""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.services import token_issue, token_revoke
from accounts.throttles import LoginAddressThrottle, LoginEmailThrottle
from moran.api.filters import NO_NUL, VISIBLE_TEXT
from moran.api.schema import error_responses


class LoginApi(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = [LoginAddressThrottle, LoginEmailThrottle]

    class InputSerializer(serializers.Serializer):
        email = serializers.CharField(max_length=254, validators=[VISIBLE_TEXT])
        password = serializers.CharField(
            max_length=4096, trim_whitespace=False, validators=[NO_NUL], style={"input_type": "password"}
        )

    class OutputSerializer(serializers.Serializer):
        access_token = serializers.CharField()
        token_type = serializers.ChoiceField(choices=["bearer"])
        expires_in = serializers.IntegerField(help_text="seconds until the token expires")

    @extend_schema(
        operation_id="auth_login",
        summary="Log in with email and password; returns a Bearer token",
        request=InputSerializer,
        responses={200: OutputSerializer, **error_responses(400, 401, 415, 429)},
        auth=[],
    )
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        issued = token_issue(**serializer.validated_data)
        body = {"access_token": issued.token, "token_type": "bearer", "expires_in": issued.expires_in}
        return Response(self.OutputSerializer(body).data, headers={"Cache-Control": "no-store"})


class LogoutApi(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        operation_id="auth_logout",
        summary="Revoke the token of this request",
        request=None,
        responses={204: None, **error_responses(401)},
    )
    def post(self, request):
        token_revoke(token=request.auth)
        return Response(status=status.HTTP_204_NO_CONTENT)
