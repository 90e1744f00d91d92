{{/* The release's full name, at most 63 characters. */}}
{{- define "jit-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "jit-operator.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "jit-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "jit-operator.serviceAccountName" -}}
{{- default (include "jit-operator.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* Whether any cloud provider is enabled (they keep a grant ledger in the namespace). */}}
{{- define "jit-operator.cloud" -}}
{{- if or (has "aws" .Values.providers) (has "gcp" .Values.providers) (has "azure" .Values.providers) -}}true{{- end -}}
{{- end -}}

{{- define "jit-operator.sealSecret" -}}
{{- printf "%s-seal" (include "jit-operator.fullname" .) -}}
{{- end -}}

{{- define "jit-operator.webhookSecret" -}}
{{- printf "%s-webhook-tls" (include "jit-operator.fullname" .) -}}
{{- end -}}

{{/* What both webhooks share. */}}
{{- define "jit-operator.webhookCommon" -}}
admissionReviewVersions: [v1]
sideEffects: None
failurePolicy: {{ .Values.webhook.failurePolicy }}
timeoutSeconds: {{ .Values.webhook.timeoutSeconds }}
# The operator's own writes (status, finalizers) never wait for its own webhook.
matchConditions:
  - name: not-the-operator
    expression: 'request.userInfo.username != "system:serviceaccount:{{ .Release.Namespace }}:{{ include "jit-operator.serviceAccountName" . }}"'
{{- end -}}
