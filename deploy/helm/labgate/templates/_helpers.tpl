{{- define "labgate.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "labgate.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "labgate.labels" -}}
{{ include "labgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* gateway.yaml: the values' gateway section, plus state and store pointing at the shared services */}}
{{- define "labgate.gatewayYaml" -}}
{{- $gw := deepCopy .Values.gateway -}}
{{- if or .Values.redis.url .Values.redis.existingSecret.name -}}
{{- $_ := set $gw "state" (dict "url" (ternary "${LABGATE_REDIS_URL}" .Values.redis.url (not (empty .Values.redis.existingSecret.name))) "cluster" .Values.redis.cluster) -}}
{{- end -}}
{{- if or .Values.postgres.url .Values.postgres.existingSecret.name -}}
{{- $_ := set $gw "store" (dict "url" (ternary "${LABGATE_DATABASE_URL}" .Values.postgres.url (not (empty .Values.postgres.existingSecret.name)))) -}}
{{- end -}}
{{- toYaml $gw -}}
{{- end -}}
